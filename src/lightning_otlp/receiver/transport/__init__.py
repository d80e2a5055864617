"""Network front ends (gRPC and HTTP); both hand bytes to the same ``Pipeline``."""
