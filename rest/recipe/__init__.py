"""The recipe: its schema with every field documented, validation messages, seed rules."""
