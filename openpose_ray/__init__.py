"""OpenPose-style multi-person pose estimation on Ray."""
