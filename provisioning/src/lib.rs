//! Overlays, cloud-init seeds, libvirt domains: create, destroy, reap.
