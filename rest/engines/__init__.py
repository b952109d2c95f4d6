"""What holds a model: the vLLM engine, the M-step's trainer and its multi-process launchers, model resolution."""
