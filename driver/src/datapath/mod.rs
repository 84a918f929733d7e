//! The kernel behind one trait: Linux (rtnetlink + aya) and a recording fake for tests.
