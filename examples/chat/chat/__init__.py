"""Chat rooms over WebSockets; every process of the site shares the rooms via the layer."""
