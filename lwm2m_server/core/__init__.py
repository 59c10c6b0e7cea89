"""LwM2M protocol logic without I/O: registration, device operations and their answers, queue mode, bootstrap plans, capability discovery."""
