"""A FUSE file server for virtio-fs: the protocol (:mod:`.protocol`), the
table of what the guest holds (:mod:`.nodes`) and the operations
(:mod:`.server`)."""
