"""Demonstration data: rosbag2 (mcap/sqlite3) -> LeRobot v3 dataset -> PyTorch samples.

    convert.convert(bags, out_dir, contract, ...)   bags -> dataset (also the `apt-convert` CLI)
    dataset.DemoDataset(root, chunk_length, ...)     dataset -> samples; dataset.make_loader(...)
    synthetic.write_synthetic_bag(path, contract, n_frames, instruction, ...)   test fixture bags
    lerobot_v3.load_v3 / validate_v3                 our reader and layout check for LeRobot v3

Modules are imported lazily by their users (torch is only needed by `dataset`). See docs/data.md.
"""
