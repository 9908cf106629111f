"""A local stand-in for ECS and Batch: moto's tasks and jobs run as processes in namespaces."""
