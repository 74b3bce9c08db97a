"""`echolm bench`: EchoLM against the systems users would pick instead, on real requests through the real stack."""
