"""Fine-tuning a character model (`charbot train`). Imports torch; never imported by serving code."""
