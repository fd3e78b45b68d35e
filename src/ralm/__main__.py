from ralm.common.threads import apply_wait_policy

apply_wait_policy()  # before anything imports torch: OpenMP reads it when it loads

from ralm.cli import main  # noqa: E402

main()
