"""The control loop: measure demand and supply, compute an allocation, publish weights."""
