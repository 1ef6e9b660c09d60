# A tiny sktime/aeon .ts file for the parser tests: 2 dimensions, 3 cases, one missing value.
#
@problemName Tiny
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength true
@seriesLength 4
@classLabel true up down
@data
1.0,2.0,3.0,4.0:-1,-2,-3,-4:up

0.5,?,1e-3,7:10,20,30,40:down
# a comment between cases
-0.25,0,0,0:1.5,2.5,3.5,4.5:up
