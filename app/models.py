"""Every ORM model, imported in one place for Alembic and the tests."""

from app.archive.models import TaskImage
from app.balance.models import ProviderBalance
from app.callbacks.models import CallbackDelivery
from app.console.models import ConsoleSignout
from app.core.db import Base
from app.notify.breaker import NotifyHost
from app.tasks.events import TaskEvent
from app.tasks.models import Task
from app.tasks.notifications import Notification
from app.tasks.provider_hold import ProviderHold
from app.tasks.references import TaskReference
from app.uploads.models import Upload
from app.workers.leases import Lease
from app.workers.models import Job

__all__ = [
    "Base",
    "CallbackDelivery",
    "ConsoleSignout",
    "Job",
    "Lease",
    "Notification",
    "NotifyHost",
    "ProviderBalance",
    "ProviderHold",
    "Task",
    "TaskEvent",
    "TaskImage",
    "TaskReference",
    "Upload",
]
