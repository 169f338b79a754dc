"""The control plane: what the API decides (placement, desired state, operations, joins).

Routes in `nubes.api` stay thin and call into here; this package never imports the API."""
