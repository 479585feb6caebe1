//! Minion wire protocols: controller (gRPC) and guest channel messages.
