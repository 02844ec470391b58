"""The Hugging Face Hub side: publish, pull, model cards, and import of benchmark teachers."""
