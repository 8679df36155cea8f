from django.conf import settings
from django.db import models


class LeaveRequest(models.Model):
    PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
    STATUSES = [(PENDING, "Pending"), (APPROVED, "Approved"), (REJECTED, "Rejected")]

    employee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leave_requests")
    starts_on = models.DateField()
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)

    def __str__(self) -> str:
        return f"{self.employee} from {self.starts_on} ({self.status})"
