"""Training recipe for the demonstration weights (synthetic images: geometric phantoms and real organ maps)."""
