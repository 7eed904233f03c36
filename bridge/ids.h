/* ids.h - finding a stream in a table kept in increasing id order (ids.c). */
#ifndef PH_IDS_H
#define PH_IDS_H

#include <stddef.h>
#include <stdint.h>

/* The first i in 0..n-1 with id_at(i) >= id, or n: a binary search, for id_at(0..n-1) is
 * increasing (new streams get greater ids and go last; forgotten ones leave in order). */
size_t ph_ids_search(size_t n, uint32_t id, uint32_t (*id_at)(size_t i));

#endif
