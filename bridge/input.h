/* input.h - the frames the host sends a subcommand on stdin (input.c). */
#ifndef PH_INPUT_H
#define PH_INPUT_H

#include "frame.h"

/* stdin is readable: read a chunk and hand every whole frame in it to on_frame. A broken frame
 * is a protocol error; stdin's end between frames is ph_leave(0), inside one a protocol error. */
void ph_input_read(void (*on_frame)(const PhFrame *f));

#endif
