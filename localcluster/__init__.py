"""The local control plane: Kubernetes built from Go modules, started on loopback with fake GPU
nodes (kwok), a process runner for runtime pods, Prometheus, and the demo. A tool of its own;
the integration tests, benchmarks and `make demo` use it."""
