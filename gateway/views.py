def fleet(r): pass
def charge_point(r, slug): pass
