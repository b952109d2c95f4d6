"""Problems and prompts: loading and splitting data, the built-in generator, prompt text, the grown set."""
