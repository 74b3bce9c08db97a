"""Implementations of the core's ports over real libraries (imported lazily) and in-memory fakes."""
