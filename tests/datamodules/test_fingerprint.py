"""The dataset fingerprint tagged on MLflow runs changes with the file list, not with the place."""

import shutil

from quadra_ad.datamodules.layout import scan_anomaly_folder
from quadra_ad.testing.synthetic import write_synthetic_dataset


def test_fingerprint_follows_the_files_not_the_folder(tmp_path):
    data = write_synthetic_dataset(tmp_path / "a", n_train=3, n_test_good=2, n_test_defect=2, size=16)
    first = scan_anomaly_folder(data).fingerprint()
    copy = shutil.copytree(data, tmp_path / "b")
    assert scan_anomaly_folder(copy).fingerprint() == first
    (copy / "train" / "good" / "000.png").unlink()
    assert scan_anomaly_folder(copy).fingerprint() != first
