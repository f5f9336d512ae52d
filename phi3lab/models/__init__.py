"""Native model implementations, registered with transformers' Auto classes on import."""
