"""The quantum-circuit service built on qtasks: circuits, the task, the HTTP API."""
