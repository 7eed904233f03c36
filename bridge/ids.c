/* ids.c - finding a stream by id in a table kept in increasing id order. */

/* A frame names its stream by id, and the relay's streams or the server's commands may be
 * thousands: a binary search, not a scan. */
#include "ids.h"

size_t ph_ids_search(size_t n, uint32_t id, uint32_t (*id_at)(size_t i))
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (id_at(mid) < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}
