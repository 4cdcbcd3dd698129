"""Tools apart from the product: the simulated fleet (``fleetgate-sim``, ``python -m
fleetgate_tools.simulate``). Installed from a checkout; the gateway's image leaves it out."""
