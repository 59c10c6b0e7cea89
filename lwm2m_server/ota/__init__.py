"""Over-the-air delivery: the update state machine, rollouts, their orchestrator, and model/firmware deployment."""
