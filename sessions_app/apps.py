from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Tenants and sessions"

    def ready(self) -> None:
        # Checkpoint storage is part of each tenant's daily usage: keep it current on every save and delete.
        from django.db.models.signals import post_delete, post_save

        from sessions_app.usage import on_checkpoint_changed

        post_save.connect(on_checkpoint_changed, sender="training_app.Checkpoint", dispatch_uid="usage-ckpt-save")
        post_delete.connect(on_checkpoint_changed, sender="training_app.Checkpoint", dispatch_uid="usage-ckpt-del")
