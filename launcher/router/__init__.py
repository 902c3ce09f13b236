"""The fleet's one endpoint: an aiohttp router in the supervisor's event loop."""
