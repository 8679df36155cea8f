"""What used to be `channel_layer.group_send(...)` in the consumers' app: a model saved,
switchboard told through its server API, after the transaction commits (a rolled back
save tells no one)."""

import logging

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver
from switchboard_client import SwitchboardError

from .models import LeaveRequest
from .switchboard import switchboard

log = logging.getLogger(__name__)


@receiver(pre_save, sender=LeaveRequest)
def remember_status(sender, instance, **kwargs):
    instance._previous_status = (
        LeaveRequest.objects.filter(pk=instance.pk).values_list("status", flat=True).first() if instance.pk else None
    )


@receiver(post_save, sender=LeaveRequest)
def notify_decision(sender, instance, created, **kwargs):
    if instance.status == LeaveRequest.PENDING or instance.status == getattr(instance, "_previous_status", None):
        return
    title = "Leave Approved" if instance.status == LeaveRequest.APPROVED else "Leave Rejected"
    message = f"Your leave request for {instance.starts_on:%b} {instance.starts_on.day} has been {instance.status}."

    def send():
        try:
            switchboard().create_notification(
                instance.employee_id,
                title,
                message,
                category="hr",
                link=f"/hr/leave-applications/{instance.pk}",
                # One key per decision: a retried task or a second save sends it once
                # (once switchboard honours the key).
                idempotency_key=f"leave-{instance.pk}-{instance.status}",
            )
        except SwitchboardError:
            log.exception("switchboard: notification for leave request %s not sent", instance.pk)

    transaction.on_commit(send)


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def name_user(sender, instance, **kwargs):
    """For tokens without a name claim (a default SimpleJWT access token): rooms show
    the name set here instead of the user id."""
    name = instance.get_full_name() or instance.get_username()

    def send():
        try:
            switchboard().set_user_name(instance.pk, name)
        except SwitchboardError:
            log.exception("switchboard: display name of user %s not set", instance.pk)

    transaction.on_commit(send)
