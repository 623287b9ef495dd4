"""``quadra-ad-upload RUN_FOLDER``: log a finished run to MLflow after the fact.

For runs whose tracking failed (server down, no network): the run folder keeps everything in its
run record, ``mlflow_run.json``, and the files it names.
"""

import argparse
import sys
from pathlib import Path

from quadra_ad.tracking.run_logger import TrackingFailed, upload_record
from quadra_ad.tracking.run_record import RECORD_FILE, DamagedRecord, RefusedRecord, RunRecord


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quadra-ad-upload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_folder", type=Path, help="the run folder quadra-ad printed")
    parser.add_argument("--tracking-uri", help="log there instead of the URI the run was configured with")
    parser.add_argument("--experiment-name", help="log under this experiment instead")
    parser.add_argument("--force", action="store_true", help="log again even if this run was logged already")
    args = parser.parse_args(argv)
    record_path = args.run_folder / RECORD_FILE
    if not record_path.is_file():
        print(f"quadra-ad-upload: error: no {RECORD_FILE} in '{args.run_folder}': is it a quadra-ad run folder "
              f"with MLflow logging configured?", file=sys.stderr)
        return 2
    try:
        record = RunRecord.from_file(record_path, tracking_uri=args.tracking_uri, experiment_name=args.experiment_name)
    except RefusedRecord as refused:  # nothing was logged: the record names what it may not
        print(f"quadra-ad-upload: error: {refused}", file=sys.stderr)
        return 2
    except DamagedRecord as damaged:
        print(f"quadra-ad-upload: error: {damaged}: the run cannot be uploaded from it (it was cut short, e.g. "
              f"by a full disk); its other files are in '{args.run_folder}'", file=sys.stderr)
        return 2
    if record.logged_run_id and not args.force:
        print(f"quadra-ad-upload: error: '{args.run_folder}' is already logged as MLflow run {record.logged_run_id}; "
              f"add --force to log it again", file=sys.stderr)
        return 2
    try:
        tracked = upload_record(record, record_path)
    except TrackingFailed as failure:
        print(f"quadra-ad-upload: {failure}", file=sys.stderr)
        return 1
    if tracked.missing_artifacts:
        print(f"quadra-ad-upload: not in the folder, so not uploaded: {', '.join(tracked.missing_artifacts)}",
              file=sys.stderr)
    print(f"quadra-ad-upload: logged MLflow run {tracked.run_id} ({tracked.status}) in experiment "
          f"'{tracked.experiment_name}' at {tracked.tracking_uri}")
    print(f"quadra-ad-upload: to browse it: {tracked.ui_hint()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
