"""Training recipe for the demonstration weights (synthetic phantoms only)."""
