"""The guest's serial console on the host: where its output goes
(``output``, ``backends``), where its input comes from (``input``), the
terminal (``terminal``), and how one run wires them (``session``)."""
