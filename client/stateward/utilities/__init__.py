"""Helpers at the reference's paths (`stateward.utilities.annotations`)."""
