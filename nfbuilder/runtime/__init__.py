"""What runs inside a vertex container: servers, servicers, the step core, TCP I/O, state."""
