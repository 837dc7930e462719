"""Ads in the feed: inventory, eligibility, the GSP auction, density, frequency caps, budgets and
pacing (state in Redis). Plain modules; the feed service calls them. Rules: ads/README.md."""
