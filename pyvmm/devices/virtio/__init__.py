"""Virtio devices on the MMIO bus: split virtqueues (:mod:`.queue`), the
virtio-mmio transport (:mod:`.mmio`), and the device types behind it
(:mod:`.blk`, :mod:`.rng`), each a :class:`.backend.VirtioBackend`."""
