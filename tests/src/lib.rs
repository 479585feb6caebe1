//! End-to-end tests: real daemon, real libvirtd, real VMs.
