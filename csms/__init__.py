"""The OCPP 1.6J central system: EV charge points connect to the platform itself."""
