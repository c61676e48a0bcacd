"""Models of the gateway: where charge points are, how to read them, what they last said."""

from gateway.models.alerts import Alert, AlertDelivery, AlertRule
from gateway.models.commands import Command
from gateway.models.history import RollupBacklog, TelemetryRollup, TelemetrySample
from gateway.models.pipeline import StageKind, StageStatus
from gateway.models.profiles import DeviceProfile, Register, StatusRule
from gateway.models.sessions import ChargingSession
from gateway.models.sitecontrol import AllocationOverride, SiteControlLease, SiteSample
from gateway.models.sites import ChargePoint, Site
from gateway.models.state import LatestTelemetry
from gateway.models.tokens import ApiToken

__all__ = [
    "Alert",
    "AlertDelivery",
    "AlertRule",
    "AllocationOverride",
    "ApiToken",
    "ChargePoint",
    "ChargingSession",
    "Command",
    "DeviceProfile",
    "LatestTelemetry",
    "Register",
    "RollupBacklog",
    "Site",
    "SiteControlLease",
    "SiteSample",
    "StageKind",
    "StageStatus",
    "StatusRule",
    "TelemetryRollup",
    "TelemetrySample",
]
