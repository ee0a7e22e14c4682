"""`charbot eval`: compare models on held-out episodes (perplexity, persona score, diversity)."""
