from django.core.management.base import BaseCommand

from engine.tiny_model import SIZES, build_tiny_model


class Command(BaseCommand):
    help = "Build the built-in tiny Qwen3 model (random weights, locally trained tokenizer) into a directory."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("out_dir")
        parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        out = build_tiny_model(options["out_dir"], SIZES[options["size"]], seed=options["seed"])
        self.stdout.write(str(out))
