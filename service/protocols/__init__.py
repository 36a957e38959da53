"""Transport-free parts of the wire protocols that more than one front-end (REST, gRPC) shares."""
