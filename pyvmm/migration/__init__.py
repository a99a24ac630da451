"""Live migration: a running guest moved to another pyvmm process, pre-copy.

``send`` turns on dirty-page logging, sends all guest RAM, then rounds of
what the guest dirtied meanwhile, until what is left fits the downtime
target at the bandwidth measured; then it pauses the guest, sends the rest
and the state (the snapshot format's), and waits for the destination to
say the guest runs there. ``receive`` is the destination: it builds the
machine from what the source says, takes the pages, restores the state.
``protocol`` is the stream between them; ``dirty`` which pages changed.
"""
