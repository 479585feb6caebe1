//! Minion's wire protocols, generated from `proto/minion/v1/*.proto`.
//!
//! - [`guest`]: the messages on the virtio-serial channel between host and in-guest agent.
//! - [`controller`] (feature `grpc`): the `miniond` gRPC service.

/// Guest channel messages (`minion.v1.guest`).
pub mod guest {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/minion.v1.guest.rs"));
}

/// The controller gRPC service (`minion.v1.controller`).
#[cfg(feature = "grpc")]
pub mod controller {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/minion.v1.controller.rs"));
}

/// A client of miniond's unix socket.
#[cfg(feature = "client")]
pub mod client;

/// Encoded `FileDescriptorSet` of the controller service, for gRPC server reflection.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/minion_descriptor.bin"));
