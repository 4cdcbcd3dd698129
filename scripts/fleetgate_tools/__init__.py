"""Tools apart from the product: the simulated fleet (``fleetgate-sim``, ``python -m
fleetgate_tools.simulate``) and the private PostgreSQL and Mosquitto that the tests, the
benchmarks and the demo start. Installed from a checkout; the gateway's image leaves it out."""
