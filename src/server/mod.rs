//! The relay server.
