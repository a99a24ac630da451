"""The virtual machine monitor proper: building a VM, running its vCPUs,
handling their exits, pausing, saving and restoring.

- ``config``: what to build (``MachineConfig``) and host quirks;
- ``builder``: KVM, the VM, guest memory, buses, devices and vCPUs, then
  either a fresh boot (``fresh_boot``) or a restored snapshot;
- ``device_manager``: the device table, and where each device lives;
- ``vcpu``: one thread per vCPU and its states (running, paused, stopped);
- ``exits``: what each VM exit means;
- ``lifecycle``: ``Vmm``, the running machine: start, pause, resume, wait,
  stop, close.
"""
